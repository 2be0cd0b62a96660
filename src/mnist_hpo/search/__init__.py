"""Studies and their search: specs, samplers, the budget rule, a trial trained and recorded."""
