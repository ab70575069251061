"""Key-group table: the customer records of one key group, and the kernel
that applies a batch of decoded touches to them.

The pure-Python twin is ``native/table_py.py``; both keep the same state and
give the same rows. A row is a plain tuple (fields: ``table_py.ROW_FIELDS``) for
output and for snapshots.
"""

from libc.math cimport exp
from libc.stdint cimport int32_t, int64_t

# Kind codes: positions in operators.events.KINDS (a test keeps them equal).
cdef enum:
    KIND_ORDER = 6
    KIND_REFUND = 7
    KIND_TICKET_OPENED = 8
    KIND_TICKET_RESOLVED = 9
    KIND_COMPLAINT = 10
    KIND_NPS = 11
    N_CHANNELS = 8
    NO_TIME = -1

KIND_CODES = {
    "order": KIND_ORDER,
    "refund": KIND_REFUND,
    "ticket_opened": KIND_TICKET_OPENED,
    "ticket_resolved": KIND_TICKET_RESOLVED,
    "complaint": KIND_COMPLAINT,
    "nps": KIND_NPS,
}
CHANNEL_COUNT = N_CHANNELS
ROW_FORMAT = 2
DEFAULT_SHORT_WINDOW_MS = 14 * 86_400_000.0
DEFAULT_LONG_WINDOW_MS = 90 * 86_400_000.0


cdef class CustomerRecord:
    """State of one customer, in fixed-size C fields."""

    def __cinit__(self, str tenant, str customer_id):
        cdef int i

        self.tenant = tenant
        self.customer_id = customer_id
        self.segment = None
        self.first_purchase_ms = NO_TIME
        self.last_purchase_ms = NO_TIME
        self.first_purchase_day = 0
        self.last_purchase_day = 0
        self.last_inbound_ms = NO_TIME
        self.last_event_ms = NO_TIME
        self.last_nps = -1
        self.last_nps_ms = NO_TIME
        self.spend_by_source = {}
        for i in range(N_CHANNELS):
            self.last_touch_ms[i] = NO_TIME
            self.inbound_touches[i] = 0
            self.outbound_touches[i] = 0
            self.engagement_ms[i] = NO_TIME
            self.engagement_short[i] = 0.0
            self.engagement_long[i] = 0.0

    cdef void purchase(self, int64_t ts_ms, int64_t day, double amount):
        # Orders on one calendar day are one transaction, timed by its
        # earliest order. A transaction's value is the sum of its orders.
        if self.orders == 0:
            self.first_purchase_day = day
            self.last_purchase_day = day
            self.first_purchase_ms = ts_ms
            self.last_purchase_ms = ts_ms
            self.first_day_spend = amount
        elif day == self.last_purchase_day:
            if day == self.first_purchase_day:
                self.first_day_spend += amount
                if ts_ms < self.first_purchase_ms:
                    self.first_purchase_ms = ts_ms
            else:
                self.repeat_spend += amount
            if ts_ms < self.last_purchase_ms:
                self.last_purchase_ms = ts_ms
        elif day > self.last_purchase_day:
            self.repeat_purchases += 1
            self.repeat_spend += amount
            self.last_purchase_day = day
            self.last_purchase_ms = ts_ms
        elif day == self.first_purchase_day:
            self.late_orders += 1
            self.first_day_spend += amount
            if ts_ms < self.first_purchase_ms:
                self.first_purchase_ms = ts_ms
        elif day < self.first_purchase_day:
            # A late order before the first transaction becomes the first;
            # the old first transaction becomes a repeat one.
            self.late_orders += 1
            self.repeat_purchases += 1
            self.repeat_spend += self.first_day_spend
            self.first_day_spend = amount
            self.first_purchase_day = day
            self.first_purchase_ms = ts_ms
        else:
            # Strictly between the first and last purchase days: the record
            # keeps no list of days, so it counts as a repeat transaction of
            # its own (see README, "Late orders").
            self.late_orders += 1
            self.repeat_purchases += 1
            self.repeat_spend += amount
        self.orders += 1

    cdef void touch(self, int64_t ts_ms, int channel, bint inbound,
                    double short_ms, double long_ms):
        cdef double age

        if ts_ms > self.last_touch_ms[channel]:
            self.last_touch_ms[channel] = ts_ms
        if not inbound:
            self.outbound_touches[channel] += 1
            return
        self.inbound_touches[channel] += 1
        if ts_ms > self.last_inbound_ms:
            self.last_inbound_ms = ts_ms
        # Exponentially weighted counts of inbound touches, short and long
        # memory, anchored at the channel's latest inbound touch; a late
        # touch counts with the weight it has at that anchor.
        age = <double>(ts_ms - self.engagement_ms[channel])
        if self.engagement_ms[channel] == NO_TIME or age >= 0:
            if self.engagement_ms[channel] != NO_TIME:
                self.engagement_short[channel] *= exp(-age / short_ms)
                self.engagement_long[channel] *= exp(-age / long_ms)
            self.engagement_short[channel] += 1.0
            self.engagement_long[channel] += 1.0
            self.engagement_ms[channel] = ts_ms
        else:
            self.engagement_short[channel] += exp(age / short_ms)
            self.engagement_long[channel] += exp(age / long_ms)

    def row(self):
        """Return the whole state as a plain tuple (``ROW_FIELDS`` order)."""
        return (
            self.tenant,
            self.customer_id,
            self.segment,
            self.first_purchase_ms,
            self.last_purchase_ms,
            self.first_purchase_day,
            self.last_purchase_day,
            self.repeat_purchases,
            self.orders,
            self.late_orders,
            self.first_day_spend,
            self.repeat_spend,
            self.refund_total,
            self.last_inbound_ms,
            self.last_event_ms,
            tuple([self.last_touch_ms[i] for i in range(N_CHANNELS)]),
            tuple([self.inbound_touches[i] for i in range(N_CHANNELS)]),
            tuple([self.outbound_touches[i] for i in range(N_CHANNELS)]),
            self.open_tickets,
            self.complaints,
            self.last_nps,
            self.last_nps_ms,
            tuple([self.engagement_ms[i] for i in range(N_CHANNELS)]),
            tuple([self.engagement_short[i] for i in range(N_CHANNELS)]),
            tuple([self.engagement_long[i] for i in range(N_CHANNELS)]),
            tuple(sorted(self.spend_by_source.items())),
        )

    def load_row(self, tuple row):
        """Set the state from a tuple made by :meth:`row`."""
        cdef int i

        self.segment = row[2]
        self.first_purchase_ms = row[3]
        self.last_purchase_ms = row[4]
        self.first_purchase_day = row[5]
        self.last_purchase_day = row[6]
        self.repeat_purchases = row[7]
        self.orders = row[8]
        self.late_orders = row[9]
        self.first_day_spend = row[10]
        self.repeat_spend = row[11]
        self.refund_total = row[12]
        self.last_inbound_ms = row[13]
        self.last_event_ms = row[14]
        for i in range(N_CHANNELS):
            self.last_touch_ms[i] = row[15][i]
            self.inbound_touches[i] = row[16][i]
            self.outbound_touches[i] = row[17][i]
        self.open_tickets = row[18]
        self.complaints = row[19]
        self.last_nps = row[20]
        self.last_nps_ms = row[21]
        for i in range(N_CHANNELS):
            self.engagement_ms[i] = row[22][i]
            self.engagement_short[i] = row[23][i]
            self.engagement_long[i] = row[24][i]
        self.spend_by_source = {source: spend for source, spend in row[25]}


cdef class CustomerTable:
    """The customer records of one key group, by (tenant, customer_id)."""

    def __cinit__(self, double short_window_ms=DEFAULT_SHORT_WINDOW_MS,
                  double long_window_ms=DEFAULT_LONG_WINDOW_MS):
        self.records = {}
        self.short_window_ms = short_window_ms
        self.long_window_ms = long_window_ms

    def __len__(self):
        return len(self.records)

    cpdef Py_ssize_t apply(self, list touches) except -1:
        """Apply decoded touches in order; return how many were applied."""
        cdef CustomerRecord record
        cdef int64_t ts_ms
        cdef int kind, channel
        cdef object touch, key, segment, source

        for touch in touches:
            channel = touch.channel
            if channel < 0 or channel >= N_CHANNELS:
                raise ValueError(f"channel code {channel} out of range")
            key = (touch.tenant, touch.customer_id)
            record = self.records.get(key)
            if record is None:
                record = CustomerRecord(touch.tenant, touch.customer_id)
                self.records[key] = record
            ts_ms = touch.ts_ms
            kind = touch.kind

            segment = touch.segment
            if segment is not None:
                record.segment = segment
            if ts_ms > record.last_event_ms:
                record.last_event_ms = ts_ms
            record.touch(ts_ms, channel, touch.inbound, self.short_window_ms,
                         self.long_window_ms)

            if kind == KIND_ORDER:
                record.purchase(ts_ms, touch.day, touch.amount)
                source = touch.source
                record.spend_by_source[source] = (
                    record.spend_by_source.get(source, 0.0) + touch.amount)
            elif kind == KIND_REFUND:
                record.refund_total += touch.amount
            elif kind == KIND_TICKET_OPENED:
                record.open_tickets += 1
            elif kind == KIND_TICKET_RESOLVED:
                if record.open_tickets > 0:
                    record.open_tickets -= 1
            elif kind == KIND_COMPLAINT:
                record.complaints += 1
            elif kind == KIND_NPS:
                if ts_ms >= record.last_nps_ms:
                    record.last_nps = touch.score
                    record.last_nps_ms = ts_ms
        return len(touches)

    def rows(self):
        """Return every record's row, sorted by (tenant, customer_id)."""
        return [
            (<CustomerRecord>self.records[key]).row()
            for key in sorted(self.records)
        ]

    def get_row(self, str tenant, str customer_id):
        """Return one customer's row, or None."""
        record = self.records.get((tenant, customer_id))
        return None if record is None else record.row()

    def load_rows(self, rows):
        """Replace the table's content with rows made by :meth:`rows`."""
        cdef CustomerRecord record

        self.records = {}
        for row in rows:
            record = CustomerRecord(row[0], row[1])
            record.load_row(tuple(row))
            self.records[(row[0], row[1])] = record
