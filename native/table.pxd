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

    cdef void purchase(self, int64_t ts_ms, int64_t day, double amount)
    cdef void touch(self, int64_t ts_ms, int channel, bint inbound,
                    double short_ms, double long_ms)


cdef class CustomerTable:
    cdef dict records
    cdef readonly double short_window_ms
    cdef readonly double long_window_ms

    cpdef Py_ssize_t apply(self, list touches) except -1
