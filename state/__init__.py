"""What Touchstream keeps per customer, how customers are grouped into key
groups, and how that state is written out and restored."""
