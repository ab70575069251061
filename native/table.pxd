from libc.stdint cimport (
    int8_t,
    int32_t,
    int64_t,
    uint8_t,
    uint16_t,
    uint32_t,
    uint64_t,
)

cdef enum:
    N_CHANNELS = 8
    # Sources of spend kept inline in a record; more go to a side dict.
    SOURCE_SLOTS = 2


# The per-channel part of a record, allocated on the channel's first touch:
# most customers use two or three of the eight channels.
cdef struct ChannelState:
    int64_t last_touch_ms
    int64_t engagement_ms
    double engagement_short
    double engagement_long
    int32_t inbound_touches
    int32_t outbound_touches


cdef struct Record:
    int64_t first_purchase_ms
    int64_t last_purchase_ms
    int64_t last_inbound_ms
    int64_t last_event_ms
    int64_t last_nps_ms
    int64_t silence_deadline_ms
    int64_t silent_since_ms
    double first_day_spend
    double repeat_spend
    double refund_total
    double window_clv
    double decline_cusum
    double source_spend[SOURCE_SLOTS]
    int32_t first_purchase_day
    int32_t last_purchase_day
    int32_t repeat_purchases
    int32_t orders
    int32_t late_orders
    int32_t open_tickets
    int32_t complaints
    int32_t last_nps
    int32_t decline_run
    uint32_t id_offset
    int32_t channel[N_CHANNELS]
    uint32_t tenant
    uint32_t segment
    uint16_t id_length
    uint16_t source_code[SOURCE_SLOTS]
    int8_t last_inbound_channel
    int8_t at_risk
    int8_t health_band
    uint8_t spend_overflow


cdef struct Timer:
    int64_t deadline_ms
    int64_t record


cdef class CustomerTable:
    cdef Record* records
    cdef Py_ssize_t count
    cdef Py_ssize_t capacity
    cdef ChannelState* channels
    cdef Py_ssize_t channel_count
    cdef Py_ssize_t channel_capacity
    cdef char* arena
    cdef Py_ssize_t arena_used
    cdef Py_ssize_t arena_capacity
    cdef uint64_t* index
    cdef Py_ssize_t index_mask
    cdef Timer* timers
    cdef Py_ssize_t timer_count
    cdef Py_ssize_t timer_capacity
    cdef list tenants
    cdef list segments
    cdef list sources
    cdef dict tenant_codes
    cdef dict segment_codes
    cdef dict source_codes
    cdef uint32_t* tenant_rank
    cdef int calling_out
    cdef dict spend_overflow
    cdef object last_tenant
    # The type of the last touch applied and the offsets of its fields
    # (see _learn_touch_type).
    cdef object touch_type
    cdef bint touch_slots
    cdef Py_ssize_t touch_offsets[12]
    cdef uint32_t last_tenant_code
    cdef readonly double short_window_ms
    cdef readonly double long_window_ms
    cdef readonly int64_t silence_window_ms
    cdef readonly object silence_window

    cdef void _reset(self) noexcept
    cdef Py_ssize_t _find(self, uint32_t tenant, const char* key,
                          Py_ssize_t length, uint64_t hash) noexcept
    cdef Py_ssize_t _lookup(self, object tenant, object customer_id) except -2
    cdef Py_ssize_t _insert(self, uint32_t tenant, const char* key,
                            Py_ssize_t length) except -1
    cdef Py_ssize_t _append(self, uint32_t tenant, const char* key,
                            Py_ssize_t length) except -1
    cdef Py_ssize_t _find_or_create(self, object tenant,
                                    object customer_id) except -1
    cdef Py_ssize_t _grow_index(self, Py_ssize_t wanted) except -2
    cdef uint64_t _record_hash(self, Py_ssize_t position) noexcept
    cdef uint32_t _tenant_code(self, object tenant) except 0xFFFFFFFF
    cdef int _rank_tenants(self) except -1
    cdef uint32_t _segment_code(self, object segment) except 0xFFFFFFFF
    cdef uint32_t _source_code(self, object source) except 0xFFFFFFFF
    cdef ChannelState* _channel(self, Py_ssize_t position, int channel) except NULL
    cdef int _add_spend(self, Py_ssize_t position, uint32_t source,
                        double amount, bint add) except -1
    cdef object _customer_id(self, Py_ssize_t position)
    cdef bint _earlier(self, Timer* left, Timer* right) noexcept
    cdef int _push_timer(self, int64_t deadline_ms,
                         Py_ssize_t position) except -1
    cdef void _pop_timer(self) noexcept
    cdef void _sift_down(self, Py_ssize_t position) noexcept
    cdef int _rebuild_timers(self) except -1
    cdef int _learn_touch_type(self, object kind) except -1
    cpdef Py_ssize_t apply(self, list touches, int64_t watermark_ms=*,
                           bint ordered=*, object signals=*) except -1
    cdef int _silence(self, Py_ssize_t position, object touch, int64_t ts_ms,
                      int channel, int64_t previous_inbound_ms,
                      int64_t watermark_ms, object signals) except -1
    cpdef Py_ssize_t fire(self, int64_t limit_ms, bint inclusive,
                          object signals) except -1
    cdef tuple _row(self, Py_ssize_t position)
    cdef int _load_row(self, object row) except -1
