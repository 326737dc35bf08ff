"""The run machinery: one supervisor per user, the run commands, the generation and training
jobs, their events and broadcast, leases, estimates, and the services they use."""
