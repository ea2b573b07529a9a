"""The burn pipeline: routing received instances into jobs, building discs, the job queue, robots."""
