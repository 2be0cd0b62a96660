"""What a study produces: model files, export, predict, the report, the dashboard."""
