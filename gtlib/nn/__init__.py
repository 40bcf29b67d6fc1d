"""gtlib.nn"""
