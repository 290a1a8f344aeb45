"""The fault campaign: thousands of calls with random faults over one pool (see campaign.py)."""
