"""What finance receives: invoices (document, formatting, render, store), month close,
credit and debit notes, the finance summary and the FOCUS export."""
