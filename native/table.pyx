"""Key-group table: the customer records of one key group, and the kernel
that applies a batch of decoded touches to them.

Records live in native memory with no Python object per customer: a growable
array of packed ``Record`` structs, an open-addressing hash index on (tenant,
customer id bytes), customer ids in one byte arena, tenants, segments and
sources interned to small codes in per-table lists, the per-channel part of
a record allocated on the channel's first touch, and a binary min-heap of
(deadline, record) for the silence timers.

The pure-Python twin is ``native/table_py.py``; both keep the same state and
give the same rows and the same snapshot bytes. A row is a plain tuple
(fields: ``table_py.ROW_FIELDS``) for output; a snapshot (``TABLE_FORMAT``,
laid out in the twin's docstring) is for checkpoints.
"""

import sys
from types import MemberDescriptorType

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.math cimport exp
from libc.stdint cimport (
    int8_t,
    int32_t,
    int64_t,
    uint8_t,
    uint16_t,
    uint32_t,
    uint64_t,
)
from libc.stdlib cimport free, qsort, realloc
from libc.string cimport memcmp, memcpy, memset


cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define TS_PREFETCH(address) __builtin_prefetch(address)
    #else
    #define TS_PREFETCH(address) ((void)(address))
    #endif
    """
    void _prefetch "TS_PREFETCH"(const void* address) noexcept nogil


cdef extern from *:
    """
    #if defined(__linux__)
    #include <sys/mman.h>
    #include <stdint.h>
    #ifndef MADV_POPULATE_WRITE
    #define MADV_POPULATE_WRITE 23
    #endif
    /* Fault in a large block that is about to be filled in one call: a
       page fault every 4 KiB costs more than writing the page. Kernels
       before 5.14 refuse the advice, and the pages then fault as usual. */
    static void ts_populate(void* data, size_t size) {
        uintptr_t start = ((uintptr_t)data + 4095) & ~(uintptr_t)4095;
        uintptr_t end = ((uintptr_t)data + size) & ~(uintptr_t)4095;
        if (size >= ((size_t)4 << 20) && end > start) {
            madvise((void*)start, end - start, MADV_POPULATE_WRITE);
        }
    }
    #else
    static void ts_populate(void* data, size_t size) {}
    #endif
    """
    void _populate "ts_populate"(void* data, size_t size) noexcept nogil


cdef extern from "Python.h":
    ctypedef struct PyObject
    ctypedef struct PyMemberDef:
        int type
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member
    void* Py_TYPE(object value)
    enum:
        T_OBJECT
        T_OBJECT_EX
    const char* PyUnicode_AsUTF8AndSize(object text,
                                        Py_ssize_t* size) except NULL
    object PyUnicode_DecodeUTF8(const char* data, Py_ssize_t size,
                                const char* errors)


# Kind codes: positions in operators.events.KINDS (a test keeps them equal).
cdef enum:
    KIND_ORDER = 6
    KIND_REFUND = 7
    KIND_TICKET_OPENED = 8
    KIND_TICKET_RESOLVED = 9
    KIND_COMPLAINT = 10
    KIND_NPS = 11
    NO_TIME = -1
    SILENCE = 0
    SILENCE_ENDED = 1
    MAX_ID_BYTES = 0xFFFF
    MAX_SOURCES = 0xFFFE
    # Snapshot layout: header, counts, then per record a fixed part and
    # its variable parts (see the twin's docstring).
    HEADER_BYTES = 16
    COUNTS_BYTES = 36
    RECORD_BYTES = 156
    CHANNEL_BYTES = 40
    SPEND_BYTES = 12
    PREFETCH_AHEAD = 8
    INDEX_AHEAD = 16

# The touch fields the kernel reads, in the order of `touch_offsets`.
cdef enum:
    F_TS_MS
    F_DAY
    F_TENANT
    F_CUSTOMER_ID
    F_SOURCE
    F_EVENT_ID
    F_CHANNEL
    F_KIND
    F_INBOUND
    F_AMOUNT
    F_SEGMENT
    F_SCORE
    N_FIELDS

_FIELD_NAMES = (
    "ts_ms", "day", "tenant", "customer_id", "source", "event_id", "channel",
    "kind", "inbound", "amount", "segment", "score",
)

KIND_CODES = {
    "order": KIND_ORDER,
    "refund": KIND_REFUND,
    "ticket_opened": KIND_TICKET_OPENED,
    "ticket_resolved": KIND_TICKET_RESOLVED,
    "complaint": KIND_COMPLAINT,
    "nps": KIND_NPS,
}
CHANNEL_COUNT = N_CHANNELS
SIGNAL_SILENCE = SILENCE
SIGNAL_SILENCE_ENDED = SILENCE_ENDED
# Where spend from sources past MAX_SOURCES of one table is counted.
OTHER_SOURCES = "(other sources)"
ROW_FORMAT = 3
TABLE_FORMAT = 1
SNAPSHOT_MAGIC = b"TSKT"
DEFAULT_SHORT_WINDOW_MS = 14 * 86_400_000.0
DEFAULT_LONG_WINDOW_MS = 90 * 86_400_000.0

# Snapshots are written with memcpy in the host's byte order; the format is
# little-endian, so a big-endian host refuses rather than write another one.
cdef bint _LITTLE_ENDIAN = sys.byteorder == "little"


cdef void* _grown(void* data, Py_ssize_t* capacity, Py_ssize_t needed,
                  size_t item_bytes) except NULL:
    # Grow by half, and by an eighth past a megabyte: a large block is
    # moved by remapping its pages, not copied, so small steps cost little
    # and leave little of a large table unused.
    cdef Py_ssize_t size = capacity[0]
    cdef void* grown

    if size < 16:
        size = 16
    while size < needed:
        size += size // 8 if <size_t>size * item_bytes > 1 << 20 else size // 2
    grown = realloc(data, <size_t>size * item_bytes)
    if grown == NULL:
        raise MemoryError()
    capacity[0] = size
    return grown


cdef void* _reserved(void* data, Py_ssize_t* capacity, Py_ssize_t needed,
                     size_t item_bytes) except? NULL:
    # Exactly `needed` items, when more than there is room for.
    cdef void* grown

    if needed <= capacity[0]:
        return data
    grown = realloc(data, <size_t>needed * item_bytes)
    if grown == NULL:
        raise MemoryError()
    _populate(grown, <size_t>needed * item_bytes)
    capacity[0] = needed
    return grown


cdef inline uint64_t _hash(uint32_t tenant, const char* key,
                           Py_ssize_t length) noexcept:
    # FNV-1a, then a finaliser: the index takes the low bits, which FNV
    # alone leaves clustered for ids that differ in their last characters.
    cdef uint64_t value = 14695981039346656037ULL ^ (
        <uint64_t>tenant * 0x9E3779B97F4A7C15ULL)
    cdef Py_ssize_t i

    for i in range(length):
        value = (value ^ <uint8_t>key[i]) * 1099511628211ULL
    value ^= value >> 33
    value *= 0xFF51AFD7ED558CCDULL
    value ^= value >> 33
    return value


cdef inline uint64_t _entry(uint64_t hash, Py_ssize_t position) noexcept:
    return (hash >> 32 << 32) | <uint64_t>(position + 1)


cdef inline int _compare_keys(Record* left, Record* right, const char* arena,
                              uint32_t* tenant_rank) noexcept nogil:
    # The order of (tenant, customer_id) as Python compares the strings:
    # UTF-8 bytes sort as code points do.
    cdef int order
    cdef Py_ssize_t shorter

    if left.tenant != right.tenant:
        return -1 if tenant_rank[left.tenant] < tenant_rank[right.tenant] else 1
    shorter = left.id_length if left.id_length < right.id_length \
        else right.id_length
    order = memcmp(arena + left.id_offset, arena + right.id_offset, shorter)
    if order != 0:
        return order
    return <int>left.id_length - <int>right.id_length


# qsort has no context argument: rows() sets these around its one call,
# under the GIL.
cdef Record* _sort_records = NULL
cdef const char* _sort_arena = NULL
cdef uint32_t* _sort_rank = NULL


cdef int _compare_indexes(const void* left, const void* right) noexcept nogil:
    return _compare_keys(&_sort_records[(<int64_t*>left)[0]],
                         &_sort_records[(<int64_t*>right)[0]],
                         _sort_arena, _sort_rank)


cdef inline void _purchase(Record* record, int64_t ts_ms, int32_t day,
                           double amount) noexcept:
    # Orders on one calendar day are one transaction, timed by its
    # earliest order. A transaction's value is the sum of its orders.
    if record.orders == 0:
        record.first_purchase_day = day
        record.last_purchase_day = day
        record.first_purchase_ms = ts_ms
        record.last_purchase_ms = ts_ms
        record.first_day_spend = amount
    elif day == record.last_purchase_day:
        if day == record.first_purchase_day:
            record.first_day_spend += amount
            if ts_ms < record.first_purchase_ms:
                record.first_purchase_ms = ts_ms
        else:
            record.repeat_spend += amount
        if ts_ms < record.last_purchase_ms:
            record.last_purchase_ms = ts_ms
    elif day > record.last_purchase_day:
        record.repeat_purchases += 1
        record.repeat_spend += amount
        record.last_purchase_day = day
        record.last_purchase_ms = ts_ms
    elif day == record.first_purchase_day:
        record.late_orders += 1
        record.first_day_spend += amount
        if ts_ms < record.first_purchase_ms:
            record.first_purchase_ms = ts_ms
    elif day < record.first_purchase_day:
        # A late order before the first transaction becomes the first;
        # the old first transaction becomes a repeat one.
        record.late_orders += 1
        record.repeat_purchases += 1
        record.repeat_spend += record.first_day_spend
        record.first_day_spend = amount
        record.first_purchase_day = day
        record.first_purchase_ms = ts_ms
    else:
        # Strictly between the first and last purchase days: the record
        # keeps no list of days, so it counts as a repeat transaction of
        # its own (see README, "Late orders").
        record.late_orders += 1
        record.repeat_purchases += 1
        record.repeat_spend += amount
    record.orders += 1


cdef inline void _touch(Record* record, ChannelState* state, int64_t ts_ms,
                        bint inbound, double short_ms,
                        double long_ms) noexcept:
    cdef double age

    if ts_ms > state.last_touch_ms:
        state.last_touch_ms = ts_ms
    if not inbound:
        state.outbound_touches += 1
        return
    state.inbound_touches += 1
    if ts_ms > record.last_inbound_ms:
        record.last_inbound_ms = ts_ms
    # Exponentially weighted counts of inbound touches, short and long
    # memory, anchored at the channel's latest inbound touch; a late
    # touch counts with the weight it has at that anchor.
    age = <double>(ts_ms - state.engagement_ms)
    if state.engagement_ms == NO_TIME or age >= 0:
        if state.engagement_ms != NO_TIME:
            state.engagement_short *= exp(-age / short_ms)
            state.engagement_long *= exp(-age / long_ms)
        state.engagement_short += 1.0
        state.engagement_long += 1.0
        state.engagement_ms = ts_ms
    else:
        state.engagement_short += exp(age / short_ms)
        state.engagement_long += exp(age / long_ms)


cdef inline bint _is_default(ChannelState* state) noexcept:
    return (state.last_touch_ms == NO_TIME and state.engagement_ms == NO_TIME
            and state.inbound_touches == 0 and state.outbound_touches == 0
            and state.engagement_short == 0.0
            and state.engagement_long == 0.0)


# Snapshot writing and reading, little-endian, unaligned.

cdef inline char* _put_i64(char* at, int64_t value) noexcept:
    memcpy(at, &value, 8)
    return at + 8


cdef inline char* _put_f64(char* at, double value) noexcept:
    memcpy(at, &value, 8)
    return at + 8


cdef inline char* _put_i32(char* at, int32_t value) noexcept:
    memcpy(at, &value, 4)
    return at + 4


cdef inline char* _put_u32(char* at, uint32_t value) noexcept:
    memcpy(at, &value, 4)
    return at + 4


cdef inline char* _put_u16(char* at, uint16_t value) noexcept:
    memcpy(at, &value, 2)
    return at + 2


cdef inline int64_t _get_i64(const char** at) noexcept:
    cdef int64_t value
    memcpy(&value, at[0], 8)
    at[0] += 8
    return value


cdef inline double _get_f64(const char** at) noexcept:
    cdef double value
    memcpy(&value, at[0], 8)
    at[0] += 8
    return value


cdef inline int32_t _get_i32(const char** at) noexcept:
    cdef int32_t value
    memcpy(&value, at[0], 4)
    at[0] += 4
    return value


cdef inline uint32_t _get_u32(const char** at) noexcept:
    cdef uint32_t value
    memcpy(&value, at[0], 4)
    at[0] += 4
    return value


cdef inline uint16_t _get_u16(const char** at) noexcept:
    cdef uint16_t value
    memcpy(&value, at[0], 2)
    at[0] += 2
    return value


cdef inline int32_t _get_day(const char** at, Py_ssize_t offset) except? -1:
    cdef int64_t day = _get_i64(at)

    if day < -2147483648 or day > 2147483647:
        _corrupt(offset, f"day number {day} out of range")
    return <int32_t>day


cdef int _corrupt(Py_ssize_t offset, str what) except -1:
    msg = f"customer-table snapshot is corrupt at byte {offset}: {what}"
    raise ValueError(msg)


def check_header(bytes data):
    """Check a snapshot's magic, format and length; return its format.

    Raise ValueError saying what is wrong: not a snapshot, a format this
    Touchstream does not read (both numbers named), truncated or too long.
    """
    if data[:4] != SNAPSHOT_MAGIC:
        msg = (
            f"not a customer-table snapshot: expected it to start with "
            f"{SNAPSHOT_MAGIC!r}, got {data[:4]!r}"
        )
        raise ValueError(msg)
    if len(data) < HEADER_BYTES:
        msg = (
            f"customer-table snapshot is truncated: {len(data)} bytes, "
            f"shorter than its {HEADER_BYTES}-byte header"
        )
        raise ValueError(msg)
    format_number = int.from_bytes(data[4:6], "little")
    if format_number != TABLE_FORMAT:
        msg = (
            f"customer-table snapshot format {format_number} is not readable "
            f"by this Touchstream (it reads format {TABLE_FORMAT})"
        )
        raise ValueError(msg)
    length = int.from_bytes(data[8:16], "little")
    if len(data) < length:
        msg = (
            f"customer-table snapshot is truncated: its header says {length} "
            f"bytes, got {len(data)}"
        )
        raise ValueError(msg)
    if len(data) > length:
        msg = (
            f"customer-table snapshot has {len(data) - length} bytes after "
            f"its end at byte {length}"
        )
        raise ValueError(msg)
    return format_number


cdef inline object _field(CustomerTable table, object touch, int field):
    # One field of a touch: from its slot when the table learnt the type's
    # layout, else by attribute.
    cdef PyObject* value

    if table.touch_slots:
        value = (<PyObject**>(<char*><void*>touch
                              + table.touch_offsets[field]))[0]
        if value != NULL:
            return <object>value
    return getattr(touch, _FIELD_NAMES[field])


cdef class CustomerTable:
    """The customer records of one key group, by (tenant, customer_id), and
    the timers of their silence deadlines (see the twin for the contract).
    """

    def __cinit__(self, double short_window_ms=DEFAULT_SHORT_WINDOW_MS,
                  double long_window_ms=DEFAULT_LONG_WINDOW_MS,
                  int64_t silence_window_ms=0, object silence_window=None):
        self.short_window_ms = short_window_ms
        self.long_window_ms = long_window_ms
        self.silence_window_ms = silence_window_ms
        self.silence_window = silence_window
        self._reset()

    def __dealloc__(self):
        free(self.records)
        free(self.channels)
        free(self.arena)
        free(self.index)
        free(self.timers)
        free(self.tenant_rank)

    cdef void _reset(self) noexcept:
        free(self.records)
        free(self.channels)
        free(self.arena)
        free(self.index)
        free(self.timers)
        free(self.tenant_rank)
        self.records = NULL
        self.count = self.capacity = 0
        self.channels = NULL
        self.channel_count = self.channel_capacity = 0
        self.arena = NULL
        self.arena_used = self.arena_capacity = 0
        self.index = NULL
        self.index_mask = -1
        self.timers = NULL
        self.timer_count = self.timer_capacity = 0
        self.tenant_rank = NULL
        self.tenants = []
        self.segments = []
        self.sources = []
        self.tenant_codes = {}
        self.segment_codes = {}
        self.source_codes = {}
        self.spend_overflow = {}
        self.last_tenant = None
        self.last_tenant_code = 0
        self.touch_type = None
        self.touch_slots = False

    def __len__(self):
        return self.count

    def tenant_names(self):
        """The tenants of the table's customers, sorted."""
        cdef bytearray seen = bytearray(len(self.tenants))
        cdef Py_ssize_t position

        for position in range(self.count):
            seen[self.records[position].tenant] = 1
        return sorted(name for name, used in zip(self.tenants, seen) if used)

    def memory_bytes(self):
        """Bytes of native memory the table holds, allocated (not only used)
        capacity included; the interned names and the overflow of spend by
        source (customers with more than two sources) are not counted."""
        return (
            self.capacity * sizeof(Record)
            + self.channel_capacity * sizeof(ChannelState)
            + self.arena_capacity
            + (self.index_mask + 1) * sizeof(uint64_t)
            + self.timer_capacity * sizeof(Timer)
            + len(self.tenants) * sizeof(uint32_t)
        )

    # The index.

    cdef Py_ssize_t _find(self, uint32_t tenant, const char* key,
                          Py_ssize_t length, uint64_t hash) noexcept:
        # The record's position, or -(slot + 1) for the free slot where it
        # would go. The index is never full (see _insert). A slot holds the
        # hash's high half beside position + 1 (0: free), so that probing
        # past other keys rarely reads their records: each read is a cache
        # miss in a large table.
        cdef Py_ssize_t slot = <Py_ssize_t>(hash & <uint64_t>self.index_mask)
        cdef uint64_t entry, tag = hash >> 32
        cdef Record* record

        while True:
            entry = self.index[slot]
            if entry == 0:
                return -(slot + 1)
            if entry >> 32 == tag:
                record = &self.records[<uint32_t>entry - 1]
                if (record.tenant == tenant and record.id_length == length
                        and memcmp(self.arena + record.id_offset, key,
                                   length) == 0):
                    return <uint32_t>entry - 1
            slot = (slot + 1) & self.index_mask

    cdef Py_ssize_t _grow_index(self, Py_ssize_t wanted) except -2:
        # Room for `wanted` records at a load of at most 3/4, every record
        # indexed again; return -1, or the position of a record whose key
        # an earlier one has (only a corrupt snapshot gives one).
        cdef Py_ssize_t size = 16, i, found
        cdef uint64_t* index
        cdef uint64_t hashes[INDEX_AHEAD]
        cdef uint64_t hash
        cdef Record* record

        while size * 3 < wanted * 4:
            size *= 2
        if self.index != NULL and size <= self.index_mask + 1:
            return -1
        index = <uint64_t*>realloc(NULL, size * sizeof(uint64_t))
        if index == NULL:
            raise MemoryError()
        memset(index, 0, size * sizeof(uint64_t))
        free(self.index)
        self.index = index
        self.index_mask = size - 1
        # Each insert is a cache miss in a large index: hash a few records
        # ahead and ask for their slots before they are needed.
        for i in range(min(INDEX_AHEAD, self.count)):
            hashes[i] = self._record_hash(i)
            _prefetch(&index[hashes[i] & <uint64_t>self.index_mask])
        for i in range(self.count):
            hash = hashes[i % INDEX_AHEAD]
            if i + INDEX_AHEAD < self.count:
                hashes[i % INDEX_AHEAD] = self._record_hash(i + INDEX_AHEAD)
                _prefetch(&index[hashes[i % INDEX_AHEAD]
                                 & <uint64_t>self.index_mask])
            record = &self.records[i]
            found = self._find(record.tenant, self.arena + record.id_offset,
                               record.id_length, hash)
            if found >= 0:
                return i
            index[-1 - found] = _entry(hash, i)
        return -1

    cdef uint64_t _record_hash(self, Py_ssize_t position) noexcept:
        cdef Record* record = &self.records[position]

        return _hash(record.tenant, self.arena + record.id_offset,
                     record.id_length)

    cdef Py_ssize_t _lookup(self, object tenant,
                            object customer_id) except -2:
        # The record of (tenant, customer_id), or -1; creates nothing.
        cdef const char* key
        cdef Py_ssize_t length, found
        cdef uint32_t code
        cdef object known

        if tenant is self.last_tenant:
            code = self.last_tenant_code
        else:
            known = self.tenant_codes.get(tenant)
            if known is None:
                return -1
            code = known
        key = PyUnicode_AsUTF8AndSize(customer_id, &length)
        if self.count == 0:
            return -1
        found = self._find(code, key, length, _hash(code, key, length))
        return found if found >= 0 else -1

    cdef Py_ssize_t _insert(self, uint32_t tenant, const char* key,
                            Py_ssize_t length) except -1:
        # The record of (tenant, key), made with default state if new.
        cdef Py_ssize_t found, position
        cdef uint64_t hash = _hash(tenant, key, length)

        if self.index == NULL or (self.count + 1) * 4 > (self.index_mask + 1) * 3:
            self._grow_index(self.count + 1)
        found = self._find(tenant, key, length, hash)
        if found >= 0:
            return found
        position = self._append(tenant, key, length)
        self.index[-1 - found] = _entry(hash, position)
        return position

    cdef Py_ssize_t _append(self, uint32_t tenant, const char* key,
                            Py_ssize_t length) except -1:
        # A new record with default state, not yet in the index.
        cdef Py_ssize_t position, channel
        cdef Record* record

        if length > MAX_ID_BYTES:
            msg = f"customer id of {length} bytes is longer than {MAX_ID_BYTES}"
            raise ValueError(msg)
        if self.count >= 0x7FFFFFFF:
            msg = "a customer table holds at most 2**31 - 1 customers"
            raise OverflowError(msg)
        if self.arena_used + length > 0xFFFFFFFF:
            msg = "the customer ids of one table exceed 4 GiB"
            raise OverflowError(msg)
        if self.count == self.capacity:
            self.records = <Record*>_grown(self.records, &self.capacity,
                                           self.count + 1, sizeof(Record))
        if self.arena_used + length > self.arena_capacity:
            self.arena = <char*>_grown(self.arena, &self.arena_capacity,
                                       self.arena_used + length, 1)
        memcpy(self.arena + self.arena_used, key, length)

        position = self.count
        record = &self.records[position]
        memset(record, 0, sizeof(Record))
        record.first_purchase_ms = NO_TIME
        record.last_purchase_ms = NO_TIME
        record.last_inbound_ms = NO_TIME
        record.last_event_ms = NO_TIME
        record.last_nps_ms = NO_TIME
        record.silence_deadline_ms = NO_TIME
        record.silent_since_ms = NO_TIME
        record.last_nps = -1
        record.window_clv = -1.0
        record.last_inbound_channel = -1
        record.health_band = -1
        for channel in range(N_CHANNELS):
            record.channel[channel] = -1
        record.tenant = tenant
        record.id_offset = <uint32_t>self.arena_used
        record.id_length = <uint16_t>length
        self.arena_used += length
        self.count += 1
        return position

    cdef Py_ssize_t _find_or_create(self, object tenant,
                                    object customer_id) except -1:
        # The record of (tenant, customer_id), made with default state if
        # new: one hash and one probe either way.
        cdef const char* key
        cdef Py_ssize_t length

        key = PyUnicode_AsUTF8AndSize(customer_id, &length)
        return self._insert(self._tenant_code(tenant), key, length)

    # Interned names.

    cdef uint32_t _tenant_code(self, object tenant) except 0xFFFFFFFF:
        # Touches come in runs of one tenant: the last one's code is kept.
        cdef object known
        cdef uint32_t code

        if tenant is self.last_tenant:
            return self.last_tenant_code
        known = self.tenant_codes.get(tenant)
        if known is not None:
            self.last_tenant = tenant
            self.last_tenant_code = known
            return known
        if not isinstance(tenant, str):
            msg = f"tenant must be a str, got {type(tenant).__name__}"
            raise TypeError(msg)
        code = len(self.tenants)
        self.tenants.append(tenant)
        self.tenant_codes[tenant] = code
        return code

    cdef int _rank_tenants(self) except -1:
        # Rows order by tenant name, and codes are in order of arrival: rank
        # the codes by name once per call of rows(), never per new tenant,
        # which made adding tenants quadratic.
        cdef uint32_t* ranks
        cdef Py_ssize_t count = len(self.tenants)

        ranks = <uint32_t*>realloc(self.tenant_rank,
                                   (count + 1) * sizeof(uint32_t))
        if ranks == NULL:
            raise MemoryError()
        self.tenant_rank = ranks
        for rank, known in enumerate(
                sorted(range(count), key=self.tenants.__getitem__)):
            ranks[<uint32_t>known] = rank
        return 0

    cdef uint32_t _segment_code(self, object segment) except 0xFFFFFFFF:
        cdef object known = self.segment_codes.get(segment)

        if known is not None:
            return known
        if not isinstance(segment, str):
            msg = f"segment must be a str or None, got {type(segment).__name__}"
            raise TypeError(msg)
        self.segment_codes[segment] = len(self.segments)
        self.segments.append(segment)
        return len(self.segments) - 1

    cdef uint32_t _source_code(self, object source) except 0xFFFFFFFF:
        cdef object known = self.source_codes.get(source)

        if known is not None:
            return known
        if not isinstance(source, str):
            msg = f"source must be a str, got {type(source).__name__}"
            raise TypeError(msg)
        if len(self.sources) >= MAX_SOURCES - 1:
            # The last code is shared by every source past the limit, so an
            # upstream that invents names cannot stop the table.
            source = OTHER_SOURCES
            known = self.source_codes.get(source)
            if known is not None:
                return known
        self.source_codes[source] = len(self.sources)
        self.sources.append(source)
        return len(self.sources) - 1

    # Parts of a record.

    cdef ChannelState* _channel(self, Py_ssize_t position,
                                int channel) except NULL:
        cdef int32_t block = self.records[position].channel[channel]
        cdef ChannelState* state

        if block >= 0:
            return &self.channels[block]
        if self.channel_count >= 0x7FFFFFFF:
            msg = "a customer table holds at most 2**31 - 1 channel states"
            raise OverflowError(msg)
        if self.channel_count == self.channel_capacity:
            self.channels = <ChannelState*>_grown(
                self.channels, &self.channel_capacity, self.channel_count + 1,
                sizeof(ChannelState))
        block = <int32_t>self.channel_count
        self.channel_count += 1
        state = &self.channels[block]
        state.last_touch_ms = NO_TIME
        state.engagement_ms = NO_TIME
        state.engagement_short = 0.0
        state.engagement_long = 0.0
        state.inbound_touches = 0
        state.outbound_touches = 0
        self.records[position].channel[channel] = block
        return state

    cdef int _add_spend(self, Py_ssize_t position, uint32_t source,
                        double amount, bint add) except -1:
        # Spend from `source`: added (as an order does) or set (a load).
        cdef Record* state = &self.records[position]
        cdef uint16_t code = <uint16_t>(source + 1)
        cdef int slot
        cdef dict extra

        for slot in range(SOURCE_SLOTS):
            if state.source_code[slot] == code:
                state.source_spend[slot] = (
                    state.source_spend[slot] + amount if add else amount)
                return 0
            if state.source_code[slot] == 0:
                state.source_code[slot] = code
                state.source_spend[slot] = 0.0 + amount if add else amount
                return 0
        extra = self.spend_overflow.get(position)
        if extra is None:
            extra = {}
            self.spend_overflow[position] = extra
            state.spend_overflow = 1
        extra[source] = extra.get(source, 0.0) + amount if add else amount
        return 0

    cdef object _customer_id(self, Py_ssize_t position):
        cdef Record* state = &self.records[position]

        return PyUnicode_DecodeUTF8(self.arena + state.id_offset,
                                    state.id_length, NULL)

    # The timers: a binary min-heap ordered as (deadline, tenant,
    # customer_id) tuples would be, so that equal deadlines fire in the
    # same order as in the twin.

    cdef bint _earlier(self, Timer* left, Timer* right) noexcept:
        cdef Record* first
        cdef Record* second

        if left.deadline_ms != right.deadline_ms:
            return left.deadline_ms < right.deadline_ms
        first = &self.records[left.record]
        second = &self.records[right.record]
        if first.tenant != second.tenant:
            # Equal deadlines of two tenants are rare: compare the names.
            return self.tenants[first.tenant] < self.tenants[second.tenant]
        return _compare_keys(first, second, self.arena, NULL) < 0

    cdef int _push_timer(self, int64_t deadline_ms,
                         Py_ssize_t position) except -1:
        cdef Py_ssize_t slot, parent
        cdef Timer timer

        if self.timer_count == self.timer_capacity:
            self.timers = <Timer*>_grown(self.timers, &self.timer_capacity,
                                         self.timer_count + 1, sizeof(Timer))
        timer.deadline_ms = deadline_ms
        timer.record = position
        slot = self.timer_count
        self.timer_count += 1
        while slot > 0:
            parent = (slot - 1) // 2
            if not self._earlier(&timer, &self.timers[parent]):
                break
            self.timers[slot] = self.timers[parent]
            slot = parent
        self.timers[slot] = timer
        return 0

    cdef void _pop_timer(self) noexcept:
        self.timer_count -= 1
        if self.timer_count > 0:
            self.timers[0] = self.timers[self.timer_count]
            self._sift_down(0)

    cdef void _sift_down(self, Py_ssize_t position) noexcept:
        cdef Timer timer = self.timers[position]
        cdef Py_ssize_t child

        while True:
            child = 2 * position + 1
            if child >= self.timer_count:
                break
            if (child + 1 < self.timer_count
                    and self._earlier(&self.timers[child + 1],
                                      &self.timers[child])):
                child += 1
            if not self._earlier(&self.timers[child], &timer):
                break
            self.timers[position] = self.timers[child]
            position = child
        self.timers[position] = timer

    cdef int _rebuild_timers(self) except -1:
        # One live entry per pending deadline; stale entries are dropped.
        cdef Py_ssize_t i, pending = 0

        for i in range(self.count):
            if self.records[i].silence_deadline_ms != NO_TIME:
                pending += 1
        if pending > self.timer_capacity:
            self.timers = <Timer*>_grown(self.timers, &self.timer_capacity,
                                         pending, sizeof(Timer))
        self.timer_count = 0
        for i in range(self.count):
            if self.records[i].silence_deadline_ms != NO_TIME:
                self.timers[self.timer_count].deadline_ms = (
                    self.records[i].silence_deadline_ms)
                self.timers[self.timer_count].record = i
                self.timer_count += 1
        for i in range(self.timer_count // 2 - 1, -1, -1):
            self._sift_down(i)
        return 0

    # The kernel.

    cdef int _learn_touch_type(self, object kind) except -1:
        # Where a touch type keeps the fields the kernel reads, when each is
        # a plain object slot (msgspec Structs, __slots__ classes): reading
        # the slot skips attribute lookup, a tenth of the kernel's time.
        cdef PyMemberDef* member
        cdef int field

        self.touch_type = kind
        self.touch_slots = True
        for field in range(N_FIELDS):
            descriptor = getattr(kind, _FIELD_NAMES[field], None)
            if (type(descriptor) is not MemberDescriptorType
                    or not issubclass(kind, descriptor.__objclass__)):
                self.touch_slots = False
                return 0
            member = (<PyMemberDescrObject*><void*>descriptor).d_member
            if member.type != T_OBJECT and member.type != T_OBJECT_EX:
                self.touch_slots = False
                return 0
            self.touch_offsets[field] = member.offset
        return 0


    cpdef Py_ssize_t apply(self, list touches, int64_t watermark_ms=NO_TIME,
                           bint ordered=False, object signals=None) except -1:
        """Apply decoded touches in order; return how many were applied."""
        cdef Record* record
        cdef ChannelState* state
        cdef int64_t ts_ms, previous_inbound_ms
        cdef Py_ssize_t position
        cdef int kind, channel
        cdef bint inbound
        cdef double amount
        cdef object touch, segment, tenant, customer_id

        if signals is None:
            signals = []
        for touch in touches:
            if Py_TYPE(touch) != <void*>self.touch_type:
                self._learn_touch_type(type(touch))
            channel = _field(self, touch, F_CHANNEL)
            if channel < 0 or channel >= N_CHANNELS:
                raise ValueError(f"channel code {channel} out of range")
            ts_ms = _field(self, touch, F_TS_MS)
            if (ordered and self.timer_count > 0
                    and self.timers[0].deadline_ms < ts_ms):
                self.fire(ts_ms, False, signals)
            tenant = _field(self, touch, F_TENANT)
            customer_id = _field(self, touch, F_CUSTOMER_ID)
            position = self._find_or_create(tenant, customer_id)
            kind = _field(self, touch, F_KIND)
            inbound = _field(self, touch, F_INBOUND)
            segment = _field(self, touch, F_SEGMENT)
            if segment is not None:
                self.records[position].segment = self._segment_code(segment) + 1
            state = self._channel(position, channel)

            record = &self.records[position]
            previous_inbound_ms = record.last_inbound_ms
            if ts_ms > record.last_event_ms:
                record.last_event_ms = ts_ms
            _touch(record, state, ts_ms, inbound, self.short_window_ms,
                   self.long_window_ms)
            if inbound and ts_ms >= previous_inbound_ms:
                record.last_inbound_channel = channel

            if kind == KIND_ORDER:
                amount = _field(self, touch, F_AMOUNT)
                _purchase(record, ts_ms, _field(self, touch, F_DAY), amount)
                self._add_spend(position,
                                self._source_code(_field(self, touch, F_SOURCE)),
                                amount, True)
            elif kind == KIND_REFUND:
                record.refund_total += _field(self, touch, F_AMOUNT)
            elif kind == KIND_TICKET_OPENED:
                record.open_tickets += 1
            elif kind == KIND_TICKET_RESOLVED:
                if record.open_tickets > 0:
                    record.open_tickets -= 1
            elif kind == KIND_COMPLAINT:
                record.complaints += 1
            elif kind == KIND_NPS:
                if ts_ms >= record.last_nps_ms:
                    record.last_nps = _field(self, touch, F_SCORE)
                    record.last_nps_ms = ts_ms
            # Silence last, so that a signal sees the event applied.
            if inbound and self.silence_window_ms > 0:
                self._silence(position, touch, ts_ms, channel,
                              previous_inbound_ms, watermark_ms, signals)
        return len(touches)

    cdef int _silence(self, Py_ssize_t position, object touch, int64_t ts_ms,
                      int channel, int64_t previous_inbound_ms,
                      int64_t watermark_ms, object signals) except -1:
        # An inbound touch ends a silence episode and moves the deadline;
        # a late one (before the watermark) only moves a deadline that is
        # still ahead of the watermark, and decides nothing. A signal's
        # sink runs Python code, so the record is looked up again after.
        cdef Record* record = &self.records[position]
        cdef int64_t window_ms, deadline
        cdef bint late = ts_ms < watermark_ms

        if record.silent_since_ms != NO_TIME:
            if late or ts_ms < record.silent_since_ms:
                return 0
            self.calling_out += 1
            try:
                signals.append((ts_ms, SILENCE_ENDED,
                                self.tenants[record.tenant],
                                _field(self, touch, F_CUSTOMER_ID), channel,
                                _field(self, touch, F_EVENT_ID),
                                ts_ms, ts_ms - previous_inbound_ms))
            finally:
                self.calling_out -= 1
            record = &self.records[position]
            record.silent_since_ms = NO_TIME
        window_ms = self.silence_window_ms
        if self.silence_window is not None:
            self.calling_out += 1
            try:
                window_ms = self.silence_window(
                    self.tenants[record.tenant],
                    None if record.segment == 0
                    else self.segments[record.segment - 1],
                    record.last_inbound_channel)
            finally:
                self.calling_out -= 1
            record = &self.records[position]
        deadline = ts_ms + window_ms
        if deadline > record.silence_deadline_ms and deadline > watermark_ms:
            record.silence_deadline_ms = deadline
            self._push_timer(deadline, position)
            if self.timer_count > 2 * self.count + 1024:
                self._rebuild_timers()
        return 0

    cpdef Py_ssize_t fire(self, int64_t limit_ms, bint inclusive,
                          object signals) except -1:
        """Fire the deadlines before `limit_ms` (or at it, when `inclusive`),
        in time order; return how many fired."""
        cdef Record* record
        cdef int64_t deadline
        cdef Py_ssize_t position, fired = 0

        while self.timer_count > 0:
            deadline = self.timers[0].deadline_ms
            if deadline > limit_ms or (deadline == limit_ms and not inclusive):
                break
            position = self.timers[0].record
            self._pop_timer()
            record = &self.records[position]
            if record.silence_deadline_ms != deadline:
                continue
            record.silence_deadline_ms = NO_TIME
            record.silent_since_ms = deadline
            fired += 1
            self.calling_out += 1
            try:
                signals.append((deadline, SILENCE, self.tenants[record.tenant],
                                self._customer_id(position),
                                record.last_inbound_channel, None, NO_TIME,
                                deadline - record.last_inbound_ms))
            finally:
                self.calling_out -= 1
        return fired

    def next_deadline(self):
        """The earliest pending deadline, or NO_TIME."""
        cdef Timer* timer

        while self.timer_count > 0:
            timer = &self.timers[0]
            if (self.records[timer.record].silence_deadline_ms
                    == timer.deadline_ms):
                return timer.deadline_ms
            self._pop_timer()
        return NO_TIME

    def set_window_state(self, str tenant, str customer_id, double window_clv,
                         int32_t decline_run, double decline_cusum,
                         int32_t at_risk, int32_t health_band):
        """Keep a customer's value-window state (``WINDOW_FIELDS``)."""
        cdef Py_ssize_t position = self._lookup(tenant, customer_id)
        cdef Record* record

        if position < 0:
            raise KeyError((tenant, customer_id))
        if not -128 <= at_risk <= 127 or not -128 <= health_band <= 127:
            msg = f"at_risk {at_risk} or health_band {health_band} out of range"
            raise OverflowError(msg)
        record = &self.records[position]
        record.window_clv = window_clv
        record.decline_run = decline_run
        record.decline_cusum = decline_cusum
        record.at_risk = <int8_t>at_risk
        record.health_band = <int8_t>health_band

    # Rows.

    cdef tuple _row(self, Py_ssize_t position):
        cdef Record* record = &self.records[position]
        cdef ChannelState* state
        cdef int channel, slot
        cdef list last_touch = [NO_TIME] * N_CHANNELS
        cdef list inbound = [0] * N_CHANNELS
        cdef list outbound = [0] * N_CHANNELS
        cdef list engagement_ms = [NO_TIME] * N_CHANNELS
        cdef list short_memory = [0.0] * N_CHANNELS
        cdef list long_memory = [0.0] * N_CHANNELS
        cdef list spend = []

        for channel in range(N_CHANNELS):
            if record.channel[channel] < 0:
                continue
            state = &self.channels[record.channel[channel]]
            last_touch[channel] = state.last_touch_ms
            inbound[channel] = state.inbound_touches
            outbound[channel] = state.outbound_touches
            engagement_ms[channel] = state.engagement_ms
            short_memory[channel] = state.engagement_short
            long_memory[channel] = state.engagement_long
        for slot in range(SOURCE_SLOTS):
            if record.source_code[slot] != 0:
                spend.append((self.sources[record.source_code[slot] - 1],
                              record.source_spend[slot]))
        if record.spend_overflow:
            for code, value in self.spend_overflow[position].items():
                spend.append((self.sources[code], value))
        spend.sort()
        return (
            self.tenants[record.tenant],
            self._customer_id(position),
            None if record.segment == 0 else self.segments[record.segment - 1],
            record.first_purchase_ms,
            record.last_purchase_ms,
            record.first_purchase_day,
            record.last_purchase_day,
            record.repeat_purchases,
            record.orders,
            record.late_orders,
            record.first_day_spend,
            record.repeat_spend,
            record.refund_total,
            record.last_inbound_ms,
            record.last_event_ms,
            tuple(last_touch),
            tuple(inbound),
            tuple(outbound),
            record.open_tickets,
            record.complaints,
            record.last_nps,
            record.last_nps_ms,
            tuple(engagement_ms),
            tuple(short_memory),
            tuple(long_memory),
            tuple(spend),
            record.silence_deadline_ms,
            record.silent_since_ms,
            record.last_inbound_channel,
            record.window_clv,
            record.decline_run,
            record.decline_cusum,
            record.at_risk,
            record.health_band,
        )

    def rows(self):
        """Return every record's row, sorted by (tenant, customer_id)."""
        global _sort_records, _sort_arena, _sort_rank
        cdef int64_t* order
        cdef Py_ssize_t i

        if self.count == 0:
            return []
        order = <int64_t*>realloc(NULL, self.count * sizeof(int64_t))
        if order == NULL:
            raise MemoryError()
        try:
            for i in range(self.count):
                order[i] = i
            self._rank_tenants()
            _sort_records = self.records
            _sort_arena = self.arena
            _sort_rank = self.tenant_rank
            qsort(order, self.count, sizeof(int64_t), _compare_indexes)
            return [self._row(order[i]) for i in range(self.count)]
        finally:
            free(order)

    def get_row(self, str tenant, str customer_id):
        """Return one customer's row, or None."""
        cdef Py_ssize_t position = self._lookup(tenant, customer_id)

        return None if position < 0 else self._row(position)

    cdef int _load_row(self, object row) except -1:
        cdef Py_ssize_t position = self._find_or_create(row[0], row[1])
        cdef Record* record
        cdef ChannelState* state
        cdef ChannelState loaded
        cdef int channel
        cdef object segment = row[2]
        cdef uint32_t segment_code = 0

        if segment is not None:
            segment_code = self._segment_code(segment) + 1
        record = &self.records[position]
        # A key seen twice: the later row replaces the earlier.
        for channel in range(N_CHANNELS):
            record.channel[channel] = -1
        record.source_code[0] = record.source_code[1] = 0
        record.spend_overflow = 0
        self.spend_overflow.pop(position, None)

        record.segment = segment_code
        record.first_purchase_ms = row[3]
        record.last_purchase_ms = row[4]
        record.first_purchase_day = row[5]
        record.last_purchase_day = row[6]
        record.repeat_purchases = row[7]
        record.orders = row[8]
        record.late_orders = row[9]
        record.first_day_spend = row[10]
        record.repeat_spend = row[11]
        record.refund_total = row[12]
        record.last_inbound_ms = row[13]
        record.last_event_ms = row[14]
        record.open_tickets = row[18]
        record.complaints = row[19]
        record.last_nps = row[20]
        record.last_nps_ms = row[21]
        record.silence_deadline_ms = row[26]
        record.silent_since_ms = row[27]
        record.last_inbound_channel = row[28]
        record.window_clv = row[29]
        record.decline_run = row[30]
        record.decline_cusum = row[31]
        record.at_risk = row[32]
        record.health_band = row[33]
        for channel in range(N_CHANNELS):
            loaded.last_touch_ms = row[15][channel]
            loaded.inbound_touches = row[16][channel]
            loaded.outbound_touches = row[17][channel]
            loaded.engagement_ms = row[22][channel]
            loaded.engagement_short = row[23][channel]
            loaded.engagement_long = row[24][channel]
            if not _is_default(&loaded):
                state = self._channel(position, channel)
                state[0] = loaded
        for source, spend in row[25]:
            self._add_spend(position, self._source_code(source), spend, False)
        return 0

    def load_rows(self, rows):
        """Replace the table's content with rows made by :meth:`rows`."""
        self._refuse_while_calling_out("load_rows")
        self._reset()
        for row in rows:
            self._load_row(row)
        self._rebuild_timers()

    def _refuse_while_calling_out(self, method):
        # A signal sink or silence_window callback runs while apply() or
        # fire() holds positions into the records: replacing them then
        # would pull the storage from under the running call.
        if self.calling_out:
            msg = (
                f"CustomerTable.{method}() was called from a signal sink or "
                "silence_window callback, inside apply() or fire()"
            )
            raise RuntimeError(msg)

    # Snapshots.

    def snapshot(self):
        """Return the whole state as bytes (``TABLE_FORMAT``), the same bytes
        as the twin's for the same state.

        The twin leaves out a channel whose state is all defaults; here
        every channel state held was touched (apply counts each touch, and
        loads skip all-default channels), so its presence is the test.
        """
        cdef Py_ssize_t size, position, names_bytes = 0, channels = 0
        cdef Record* record
        cdef Record* ahead
        cdef ChannelState* state
        cdef int channel, slot
        cdef uint16_t spends
        cdef uint8_t mask
        cdef char* at
        cdef list names = []
        cdef bytes data, name
        cdef dict extra

        if not _LITTLE_ENDIAN:
            msg = "customer-table snapshots need a little-endian host"
            raise NotImplementedError(msg)
        for table in (self.tenants, self.segments, self.sources):
            encoded = [text.encode() for text in table]
            names.append(encoded)
            for name in encoded:
                names_bytes += 4 + len(name)
        size = HEADER_BYTES + COUNTS_BYTES + names_bytes
        for position in range(self.count):
            record = &self.records[position]
            size += RECORD_BYTES + record.id_length
            for channel in range(N_CHANNELS):
                if record.channel[channel] >= 0:
                    channels += 1
            for slot in range(SOURCE_SLOTS):
                if record.source_code[slot] != 0:
                    size += SPEND_BYTES
            if record.spend_overflow:
                size += SPEND_BYTES * len(self.spend_overflow[position])

        size += channels * CHANNEL_BYTES
        data = PyBytes_FromStringAndSize(NULL, size)
        at = PyBytes_AS_STRING(data)
        _populate(at, size)
        memcpy(at, b"TSKT", 4)
        at = _put_u16(at + 4, TABLE_FORMAT)
        at = _put_u16(at, 0)
        at = _put_i64(at, size)
        for encoded in names:
            at = _put_u32(at, len(encoded))
        at = _put_i64(at, self.count)
        at = _put_i64(at, self.arena_used)
        at = _put_i64(at, channels)
        for encoded in names:
            for name in encoded:
                at = _put_u32(at, len(name))
                memcpy(at, <char*>name, len(name))
                at += len(name)

        for position in range(self.count):
            record = &self.records[position]
            spends = 0
            for slot in range(SOURCE_SLOTS):
                if record.source_code[slot] != 0:
                    spends += 1
            extra = None
            if record.spend_overflow:
                extra = self.spend_overflow[position]
                spends += len(extra)
            at = _put_u32(at, record.tenant)
            at = _put_u32(at, record.segment)
            at = _put_u16(at, record.id_length)
            mask = 0
            for channel in range(N_CHANNELS):
                if record.channel[channel] >= 0:
                    mask |= 1 << channel
            if position + PREFETCH_AHEAD < self.count:
                # Channel states lie in order of first touch, not of
                # records: ask for a later record's while this one is
                # written.
                ahead = &self.records[position + PREFETCH_AHEAD]
                for channel in range(N_CHANNELS):
                    if ahead.channel[channel] >= 0:
                        _prefetch(&self.channels[ahead.channel[channel]])
            at[0] = <char>mask
            at = _put_u16(at + 1, spends)
            at = _put_i64(at, record.first_purchase_ms)
            at = _put_i64(at, record.last_purchase_ms)
            at = _put_i64(at, record.first_purchase_day)
            at = _put_i64(at, record.last_purchase_day)
            at = _put_i32(at, record.repeat_purchases)
            at = _put_i32(at, record.orders)
            at = _put_i32(at, record.late_orders)
            at = _put_f64(at, record.first_day_spend)
            at = _put_f64(at, record.repeat_spend)
            at = _put_f64(at, record.refund_total)
            at = _put_i64(at, record.last_inbound_ms)
            at = _put_i64(at, record.last_event_ms)
            at = _put_i32(at, record.open_tickets)
            at = _put_i32(at, record.complaints)
            at = _put_i32(at, record.last_nps)
            at = _put_i64(at, record.last_nps_ms)
            at = _put_i64(at, record.silence_deadline_ms)
            at = _put_i64(at, record.silent_since_ms)
            at[0] = record.last_inbound_channel
            at = _put_f64(at + 1, record.window_clv)
            at = _put_i32(at, record.decline_run)
            at = _put_f64(at, record.decline_cusum)
            at[0] = record.at_risk
            at[1] = record.health_band
            at += 2
            memcpy(at, self.arena + record.id_offset, record.id_length)
            at += record.id_length
            for channel in range(N_CHANNELS):
                if record.channel[channel] < 0:
                    continue
                state = &self.channels[record.channel[channel]]
                at = _put_i64(at, state.last_touch_ms)
                at = _put_i64(at, state.engagement_ms)
                at = _put_i32(at, state.inbound_touches)
                at = _put_i32(at, state.outbound_touches)
                at = _put_f64(at, state.engagement_short)
                at = _put_f64(at, state.engagement_long)
            for slot in range(SOURCE_SLOTS):
                if record.source_code[slot] != 0:
                    at = _put_u32(at, record.source_code[slot] - 1)
                    at = _put_f64(at, record.source_spend[slot])
            if extra is not None:
                for code, value in extra.items():
                    at = _put_u32(at, code)
                    at = _put_f64(at, value)
        return data

    def restore(self, data):
        """Replace the table's content with a :meth:`snapshot` (of this
        implementation or the twin). A refused snapshot leaves it empty."""
        cdef bytes blob = bytes(data)

        self._refuse_while_calling_out("restore")
        self._reset()
        try:
            check_header(blob)
            if not _LITTLE_ENDIAN:
                msg = "customer-table snapshots need a little-endian host"
                raise NotImplementedError(msg)
            self._restore(blob)
        except BaseException:
            self._reset()
            raise

    def _restore(self, bytes blob):
        cdef const char* start = blob
        cdef const char* end = start + len(blob)
        cdef const char* at = start + HEADER_BYTES
        cdef const char* key
        cdef uint32_t counts[3]
        cdef uint32_t length, tenant, segment, code
        cdef uint16_t id_length, spends
        cdef uint8_t mask
        cdef int64_t records, id_bytes, channels
        cdef Py_ssize_t position, offset, index, need
        cdef Record* record
        cdef ChannelState* state
        cdef Record loaded
        cdef int channel
        cdef int8_t last_channel

        if end - at < COUNTS_BYTES:
            _corrupt(at - start, "the counts are cut short")
        for index in range(3):
            counts[index] = _get_u32(&at)
        records = _get_i64(&at)
        id_bytes = _get_i64(&at)
        channels = _get_i64(&at)
        for index, names, known in (
                (0, self.tenants, self.tenant_codes),
                (1, self.segments, self.segment_codes),
                (2, self.sources, self.source_codes)):
            for code in range(counts[index]):
                if end - at < 4:
                    _corrupt(at - start, "a name is cut short")
                length = _get_u32(&at)
                if end - at < length:
                    _corrupt(at - start, "a name is cut short")
                try:
                    name = PyUnicode_DecodeUTF8(at, length, NULL)
                except UnicodeDecodeError:
                    _corrupt(at - start, "a name is not UTF-8")
                if name in known:
                    _corrupt(at - start, f"the name {name!r} is there twice")
                known[name] = code
                names.append(name)
                at += length
        if counts[2] > MAX_SOURCES:
            _corrupt(HEADER_BYTES, f"{counts[2]} sources, more than the limit")
        if records < 0 or records > (end - at) // RECORD_BYTES:
            _corrupt(HEADER_BYTES + 12, f"{records} records cannot fit")
        if id_bytes < 0 or id_bytes > end - at:
            _corrupt(HEADER_BYTES + 20, f"{id_bytes} bytes of ids cannot fit")
        if channels < 0 or channels > (end - at) // CHANNEL_BYTES:
            _corrupt(HEADER_BYTES + 28, f"{channels} channel states cannot fit")
        # Each array once at its final size: no copies while growing, and
        # no slack.
        self.records = <Record*>_reserved(self.records, &self.capacity,
                                          records, sizeof(Record))
        self.arena = <char*>_reserved(self.arena, &self.arena_capacity,
                                      id_bytes, 1)
        self.channels = <ChannelState*>_reserved(
            self.channels, &self.channel_capacity, channels,
            sizeof(ChannelState))

        for position in range(records):
            offset = at - start
            if end - at < RECORD_BYTES:
                _corrupt(offset, "a record is cut short")
            tenant = _get_u32(&at)
            segment = _get_u32(&at)
            id_length = _get_u16(&at)
            mask = <uint8_t>at[0]
            at += 1
            spends = _get_u16(&at)
            if tenant >= counts[0]:
                _corrupt(offset, f"tenant code {tenant} out of range")
            if segment > counts[1]:
                _corrupt(offset, f"segment code {segment} out of range")
            loaded.first_purchase_ms = _get_i64(&at)
            loaded.last_purchase_ms = _get_i64(&at)
            loaded.first_purchase_day = _get_day(&at, offset)
            loaded.last_purchase_day = _get_day(&at, offset)
            loaded.repeat_purchases = _get_i32(&at)
            loaded.orders = _get_i32(&at)
            loaded.late_orders = _get_i32(&at)
            loaded.first_day_spend = _get_f64(&at)
            loaded.repeat_spend = _get_f64(&at)
            loaded.refund_total = _get_f64(&at)
            loaded.last_inbound_ms = _get_i64(&at)
            loaded.last_event_ms = _get_i64(&at)
            loaded.open_tickets = _get_i32(&at)
            loaded.complaints = _get_i32(&at)
            loaded.last_nps = _get_i32(&at)
            loaded.last_nps_ms = _get_i64(&at)
            loaded.silence_deadline_ms = _get_i64(&at)
            loaded.silent_since_ms = _get_i64(&at)
            last_channel = <int8_t>at[0]
            at += 1
            loaded.window_clv = _get_f64(&at)
            loaded.decline_run = _get_i32(&at)
            loaded.decline_cusum = _get_f64(&at)
            loaded.at_risk = <int8_t>at[0]
            loaded.health_band = <int8_t>at[1]
            at += 2
            if last_channel < -1 or last_channel >= N_CHANNELS:
                _corrupt(offset, f"channel code {last_channel} out of range")
            need = id_length + spends * SPEND_BYTES
            for channel in range(N_CHANNELS):
                if mask & (1 << channel):
                    need += CHANNEL_BYTES
            if end - at < need:
                _corrupt(offset, "a record is cut short")

            key = at
            if id_length > 0 and (<uint8_t>key[0] & 0xC0) == 0x80:
                _corrupt(offset, "a customer id is not UTF-8")
            at += id_length
            self._append(tenant, key, id_length)
            record = &self.records[position]
            loaded.source_spend[0] = loaded.source_spend[1] = 0.0
            loaded.tenant = tenant
            loaded.segment = segment
            loaded.id_offset = record.id_offset
            loaded.id_length = id_length
            loaded.last_inbound_channel = last_channel
            loaded.spend_overflow = 0
            for channel in range(N_CHANNELS):
                loaded.channel[channel] = -1
            loaded.source_code[0] = loaded.source_code[1] = 0
            record[0] = loaded
            for channel in range(N_CHANNELS):
                if not mask & (1 << channel):
                    continue
                state = self._channel(position, channel)
                state.last_touch_ms = _get_i64(&at)
                state.engagement_ms = _get_i64(&at)
                state.inbound_touches = _get_i32(&at)
                state.outbound_touches = _get_i32(&at)
                state.engagement_short = _get_f64(&at)
                state.engagement_long = _get_f64(&at)
            for index in range(spends):
                code = _get_u32(&at)
                if code >= counts[2]:
                    _corrupt(at - 4 - start, f"source code {code} out of range")
                self._add_spend(position, code, _get_f64(&at), False)
        if at != end:
            _corrupt(at - start, "bytes left after the last record")
        if self.arena_used != id_bytes or self.channel_count != channels:
            _corrupt(HEADER_BYTES + 20, "the counts disagree with the records")
        # No id starts inside a character, so the ids are each UTF-8 when
        # all of them together are: one check of the arena.
        try:
            PyUnicode_DecodeUTF8(self.arena, self.arena_used, NULL)
        except UnicodeDecodeError:
            _corrupt(HEADER_BYTES, "a customer id is not UTF-8")
        # Indexed once all are in, to prefetch ahead (see _grow_index).
        position = self._grow_index(records)
        if position >= 0:
            msg = (
                f"customer-table snapshot is corrupt: customer "
                f"{self._customer_id(position)!r} of tenant "
                f"{self.tenants[self.records[position].tenant]!r} is there twice"
            )
            raise ValueError(msg)
        self._rebuild_timers()
