"""Results (or forwarded series) to DICOM destinations: C-STORE with retries, each instance
acknowledged once per destination (``oxidicom_deliveries``)."""
