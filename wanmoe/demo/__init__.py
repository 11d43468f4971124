"""wanmoe.demo"""
