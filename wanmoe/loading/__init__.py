"""wanmoe.loading"""
