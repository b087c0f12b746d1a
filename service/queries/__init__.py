"""Private statistics and sentiment queries: schema -> plan -> price -> compute -> noise."""
