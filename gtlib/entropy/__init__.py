"""gtlib.entropy"""
