"""What every layer may lean on and none of it knows the domain: settings, logs, retries,
stopping tasks, side tasks, counters and the validation messages of cattrs."""
