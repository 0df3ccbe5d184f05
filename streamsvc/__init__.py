"""streamsvc: HTTP streaming on Twisted producers."""
