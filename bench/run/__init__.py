"""Running a grid: the Ray runner and its stage plan, one stage in a worker, and the local Ray instance."""
