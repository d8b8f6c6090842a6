"""Carriers both ways (SPEC §14): locate requests to carriers and their answers."""
