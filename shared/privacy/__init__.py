"""Customers' data under the LGPD (docs/privacy.md): who a customer is across the keys and queues
(`customer`), everything held about them, owner by owner (`holdings`, `owners`), its export and
erasure (`erasure`), their own requests (`requests`), the dead-letter queue's part (`deadletters`)
and how long anything is kept (`retention`)."""
