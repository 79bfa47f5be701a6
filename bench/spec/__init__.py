"""What a grid asks for, as typed values: jobs and their content keys, hardware targets."""
