"""Tests; they mirror the dhrd package."""
