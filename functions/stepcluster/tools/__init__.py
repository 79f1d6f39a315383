"""The `stepcluster` command's own tools (a workflow's picture, a deployed run's client): run on
the user's machine, never in a function (functions/Makefile leaves this folder out)."""
