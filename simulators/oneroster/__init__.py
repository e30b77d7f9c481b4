"""A SIS speaking the OneRoster 1.1 and 1.2 rostering REST APIs over sample CSV data."""
