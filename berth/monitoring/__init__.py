"""What happens to predictions after they are answered: the prediction log and feedback, live
accuracy, drift and sampled value metrics. Each is a dataplane observer or reads what one wrote.
"""
