"""stepcluster: HPC job workflows on short-lived clusters, driven by AWS Step Functions.

Dependencies flow one way: handlers -> service -> {clusters, remote, schedulers} -> models.
Schedulers never import paramiko or boto3; remote never imports boto3.
"""
