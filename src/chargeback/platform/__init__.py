"""What every stage shares: settings, the warehouse connection, periods and windows, the
money rule, events and failure notifications, the GX validation runner, mart freshness."""
