"""Datasets: episodes, LeRobot v3 and ACT HDF5 formats, training windows, statistics."""
