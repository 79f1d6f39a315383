"""Lambda entry points: event in, one call into stepcluster.service, result out."""
