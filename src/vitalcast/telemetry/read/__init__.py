"""The read path: a GET answered from the cache with one hot read, never waiting for a compute."""
