"""From a complete series to processing: rules decide what runs (jobs, modules and delivery
follow in the next steps)."""
