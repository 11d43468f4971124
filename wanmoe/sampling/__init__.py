"""wanmoe.sampling"""
