"""`ft train`: model loading, data, TRL trainers and run outputs."""
