"""Deployment: latency as the robot feels it, and export of few-step students."""
