-- Cancel: a user asked a running run to stop. The instance running it hears at once by
-- NOTIFY, or at its next lease renewal if it missed that; resuming the run clears it.
ALTER TABLE training_runs ADD COLUMN cancel_requested_at timestamptz;
