from libc.stdint cimport int32_t, int64_t


cdef class CustomerRecord:
    cdef readonly str tenant
    cdef readonly str customer_id
    cdef public object segment
    cdef int64_t first_purchase_ms
    cdef int64_t last_purchase_ms
    cdef int64_t first_purchase_day
    cdef int64_t last_purchase_day
    cdef int32_t repeat_purchases
    cdef int32_t orders
    cdef int32_t late_orders
    cdef double first_day_spend
    cdef double repeat_spend
    cdef double refund_total
    cdef int64_t last_inbound_ms
    cdef int64_t last_event_ms
    cdef int64_t last_touch_ms[8]
    cdef int32_t inbound_touches[8]
    cdef int32_t outbound_touches[8]
    cdef int32_t open_tickets
    cdef int32_t complaints
    cdef int32_t last_nps
    cdef int64_t last_nps_ms
    cdef int64_t engagement_ms[8]
    cdef double engagement_short[8]
    cdef double engagement_long[8]
    cdef public dict spend_by_source
    cdef int64_t silence_deadline_ms
    cdef int64_t silent_since_ms
    cdef int32_t last_inbound_channel
    cdef double window_clv
    cdef int32_t decline_run
    cdef double decline_cusum
    cdef int32_t at_risk
    cdef int32_t health_band

    cdef void purchase(self, int64_t ts_ms, int64_t day, double amount)
    cdef void touch(self, int64_t ts_ms, int channel, bint inbound,
                    double short_ms, double long_ms)


cdef class CustomerTable:
    cdef dict records
    cdef readonly double short_window_ms
    cdef readonly double long_window_ms
    cdef readonly int64_t silence_window_ms
    cdef readonly object silence_window
    cdef list timers

    cpdef Py_ssize_t apply(self, list touches, int64_t watermark_ms=*,
                           bint ordered=*, object signals=*) except -1
    cdef void _silence(self, CustomerRecord record, object touch,
                       int64_t previous_inbound_ms, int64_t watermark_ms,
                       object signals) except *
    cpdef Py_ssize_t fire(self, int64_t limit_ms, bint inclusive,
                          object signals) except -1
