"""wanmoe.parallel"""
