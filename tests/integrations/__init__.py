"""Tests of the web-server integrations, against real servers on 127.0.0.1."""
