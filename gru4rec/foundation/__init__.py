"""The foundation every stage stands on: error types, atomic writes, logging and progress, devices."""
