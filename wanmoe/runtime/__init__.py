"""wanmoe.runtime"""
