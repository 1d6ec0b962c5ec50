"""Heinsen (2019): routing capsules by net benefit to use / net cost to ignore."""
