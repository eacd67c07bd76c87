"""Prediction that is not a request: batch jobs over tables and files, and stream consumers."""
