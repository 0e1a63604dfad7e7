"""What a job does around Lightning: run it (job.py) and its sweep (sweep.py), check its config (checks.py,
overrides.py), hold its folder (folder_lock.py), fit (fit.py), resume (resume_plan.py, resume_callback.py),
track (tracking.py) and hand a number to a hyperparameter search (objective.py)."""
