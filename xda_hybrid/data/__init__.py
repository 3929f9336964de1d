"""Datasets: synthetic twin generators and packaged data."""
