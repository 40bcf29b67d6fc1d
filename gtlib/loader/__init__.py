"""gtlib.loader"""
