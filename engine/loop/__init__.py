"""One campaign round: its stages, anomaly flagging and pool replay."""
