"""One module per task (sentiment, classify, summarize) over a shared base: requests in, typed rows out."""
