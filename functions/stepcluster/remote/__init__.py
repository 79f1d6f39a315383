"""Talking to the head node: SSH connections (paramiko) and command results. No boto3 here."""
