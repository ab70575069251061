"""Key-group table: the customer records of one key group, and the kernel
that applies a batch of decoded touches to them.

The pure-Python twin is ``native/table_py.py``; both keep the same state and
give the same rows. A row is a plain tuple (fields: ``table_py.ROW_FIELDS``) for
output and for snapshots.
"""

import heapq

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
    SILENCE = 0
    SILENCE_ENDED = 1

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
ROW_FORMAT = 3
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
        self.silence_deadline_ms = NO_TIME
        self.silent_since_ms = NO_TIME
        self.last_inbound_channel = -1
        self.window_clv = -1.0
        self.decline_run = 0
        self.decline_cusum = 0.0
        self.at_risk = 0
        self.health_band = -1

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
            self.silence_deadline_ms,
            self.silent_since_ms,
            self.last_inbound_channel,
            self.window_clv,
            self.decline_run,
            self.decline_cusum,
            self.at_risk,
            self.health_band,
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
        self.silence_deadline_ms = row[26]
        self.silent_since_ms = row[27]
        self.last_inbound_channel = row[28]
        self.window_clv = row[29]
        self.decline_run = row[30]
        self.decline_cusum = row[31]
        self.at_risk = row[32]
        self.health_band = row[33]


cdef class CustomerTable:
    """The customer records of one key group, by (tenant, customer_id), and
    the timers of their silence deadlines (see the twin for the contract).
    """

    def __cinit__(self, double short_window_ms=DEFAULT_SHORT_WINDOW_MS,
                  double long_window_ms=DEFAULT_LONG_WINDOW_MS,
                  int64_t silence_window_ms=0, object silence_window=None):
        self.records = {}
        self.short_window_ms = short_window_ms
        self.long_window_ms = long_window_ms
        self.silence_window_ms = silence_window_ms
        self.silence_window = silence_window
        # A min-heap of (deadline, tenant, customer_id); an entry whose
        # deadline is no longer the record's is stale and skipped when popped.
        self.timers = []

    def __len__(self):
        return len(self.records)

    cpdef Py_ssize_t apply(self, list touches, int64_t watermark_ms=NO_TIME,
                           bint ordered=False, object signals=None) except -1:
        """Apply decoded touches in order; return how many were applied."""
        cdef CustomerRecord record
        cdef int64_t ts_ms, previous_inbound_ms
        cdef int kind, channel
        cdef bint inbound
        cdef object touch, key, segment, source

        if signals is None:
            signals = []
        for touch in touches:
            channel = touch.channel
            if channel < 0 or channel >= N_CHANNELS:
                raise ValueError(f"channel code {channel} out of range")
            ts_ms = touch.ts_ms
            if ordered and self.timers and self.timers[0][0] < ts_ms:
                self.fire(ts_ms, False, signals)
            key = (touch.tenant, touch.customer_id)
            record = self.records.get(key)
            if record is None:
                record = CustomerRecord(touch.tenant, touch.customer_id)
                self.records[key] = record
            kind = touch.kind
            inbound = touch.inbound
            previous_inbound_ms = record.last_inbound_ms

            segment = touch.segment
            if segment is not None:
                record.segment = segment
            if ts_ms > record.last_event_ms:
                record.last_event_ms = ts_ms
            record.touch(ts_ms, channel, inbound, self.short_window_ms,
                         self.long_window_ms)
            if inbound and ts_ms >= previous_inbound_ms:
                record.last_inbound_channel = channel

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
            # Silence last, so that a signal sees the event applied.
            if inbound and self.silence_window_ms > 0:
                self._silence(record, touch, previous_inbound_ms, watermark_ms,
                              signals)
        return len(touches)

    cdef void _silence(self, CustomerRecord record, object touch,
                       int64_t previous_inbound_ms, int64_t watermark_ms,
                       object signals) except *:
        # An inbound touch ends a silence episode and moves the deadline;
        # a late one (before the watermark) only moves a deadline that is
        # still ahead of the watermark, and decides nothing.
        cdef int64_t ts_ms = touch.ts_ms
        cdef int64_t window_ms, deadline
        cdef bint late = ts_ms < watermark_ms

        if record.silent_since_ms != NO_TIME:
            if late or ts_ms < record.silent_since_ms:
                return
            signals.append((ts_ms, SILENCE_ENDED, record.tenant,
                            record.customer_id, touch.channel, touch.event_id,
                            ts_ms, ts_ms - previous_inbound_ms))
            record.silent_since_ms = NO_TIME
        window_ms = self.silence_window_ms
        if self.silence_window is not None:
            window_ms = self.silence_window(
                record.tenant, record.segment, record.last_inbound_channel)
        deadline = ts_ms + window_ms
        if deadline > record.silence_deadline_ms and deadline > watermark_ms:
            record.silence_deadline_ms = deadline
            heapq.heappush(self.timers,
                           (deadline, record.tenant, record.customer_id))
            if len(self.timers) > 2 * len(self.records) + 1024:
                self._rebuild_timers()

    cpdef Py_ssize_t fire(self, int64_t limit_ms, bint inclusive,
                          object signals) except -1:
        """Fire the deadlines before `limit_ms` (or at it, when `inclusive`),
        in time order; return how many fired."""
        cdef CustomerRecord record
        cdef int64_t deadline
        cdef Py_ssize_t fired = 0
        cdef list timers = self.timers

        while timers:
            deadline = timers[0][0]
            if deadline > limit_ms or (deadline == limit_ms and not inclusive):
                break
            _, tenant, customer_id = heapq.heappop(timers)
            record = self.records.get((tenant, customer_id))
            if record is None or record.silence_deadline_ms != deadline:
                continue
            record.silence_deadline_ms = NO_TIME
            record.silent_since_ms = deadline
            fired += 1
            signals.append((deadline, SILENCE, tenant, customer_id,
                            record.last_inbound_channel, None, NO_TIME,
                            deadline - record.last_inbound_ms))
        return fired

    def next_deadline(self):
        """The earliest pending deadline, or NO_TIME."""
        cdef CustomerRecord record

        while self.timers:
            deadline, tenant, customer_id = self.timers[0]
            record = self.records.get((tenant, customer_id))
            if record is not None and record.silence_deadline_ms == deadline:
                return deadline
            heapq.heappop(self.timers)
        return NO_TIME

    def _rebuild_timers(self):
        cdef CustomerRecord record

        self.timers = [
            (record.silence_deadline_ms, record.tenant, record.customer_id)
            for record in self.records.values()
            if record.silence_deadline_ms != NO_TIME
        ]
        heapq.heapify(self.timers)

    def set_window_state(self, str tenant, str customer_id, double window_clv,
                         int32_t decline_run, double decline_cusum,
                         int32_t at_risk, int32_t health_band):
        """Keep a customer's value-window state (``WINDOW_FIELDS``)."""
        cdef CustomerRecord record = self.records[(tenant, customer_id)]

        record.window_clv = window_clv
        record.decline_run = decline_run
        record.decline_cusum = decline_cusum
        record.at_risk = at_risk
        record.health_band = health_band

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
        self._rebuild_timers()
