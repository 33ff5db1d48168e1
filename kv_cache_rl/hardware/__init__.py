"""Hardware: model and GPU specs, KV precision tiers, the measured cost model, and the
calibration that derives them from public measurements (``calibrate``)."""
