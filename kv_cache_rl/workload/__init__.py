"""Workloads: requests and traces, trace files, arrival processes, sessions, the statistics
derived from public traces, and the generators that draw episodes from them."""
