"""Media helpers: encoding engine frames into files the API serves."""
