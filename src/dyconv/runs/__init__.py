"""Run folders: layout and names, checkpoint load/validate/atomic save, resume, launch locks and state,
safe stored configs, rebuilding a trained run, sweeps, and the training orchestration the entry
points call."""
